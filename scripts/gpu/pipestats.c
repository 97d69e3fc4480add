// What the Vulkan driver made of a compute shader: registers, local (spill) memory and the other statistics
// a driver reports through VK_KHR_pipeline_executable_properties. WebGPU on Dawn gives no such view, so
// this compiles the SPIR-V that Dawn's Tint produced for a kernel (scripts/gpu/spirv-dump.mjs) on the same
// driver directly.
// Build (here): gcc -O2 -o .gpu/pipestats scripts/gpu/pipestats.c -lvulkan
// Run (GPU machine, after scripts/gpu/setup.sh): [IR_DIR=dir] .gpu/pipestats file.spv [file.spv ...]
// With IR_DIR set, each kernel's internal representations (whatever the driver offers: on NVIDIA the
// machine code, if it gives it) are written there as <file>.<n>.<name>.txt.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vulkan/vulkan.h>

static void *slurp(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  void *b = malloc(*n);
  if (fread(b, 1, *n, f) != *n) { fclose(f); free(b); return NULL; }
  fclose(f);
  return b;
}

#define CHECK(x) do { VkResult r_ = (x); if (r_ != VK_SUCCESS) { fprintf(stderr, "%s: %d\n", #x, r_); return 1; } } while (0)

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: pipestats file.spv ...\n"); return 2; }
  VkApplicationInfo app = {VK_STRUCTURE_TYPE_APPLICATION_INFO, NULL, "pipestats", 1, NULL, 0, VK_API_VERSION_1_3};
  VkInstanceCreateInfo ici = {VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, NULL, 0, &app, 0, NULL, 0, NULL};
  VkInstance inst;
  CHECK(vkCreateInstance(&ici, NULL, &inst));
  uint32_t np = 8;
  VkPhysicalDevice pds[8];
  CHECK(vkEnumeratePhysicalDevices(inst, &np, pds));
  if (!np) { fprintf(stderr, "no Vulkan device\n"); return 1; }
  VkPhysicalDeviceProperties props;
  vkGetPhysicalDeviceProperties(pds[0], &props);
  printf("device: %s\n", props.deviceName);
  VkPhysicalDevicePipelineExecutablePropertiesFeaturesKHR pef = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PIPELINE_EXECUTABLE_PROPERTIES_FEATURES_KHR, NULL, VK_TRUE};
  // Tint's SPIR-V uses the Vulkan memory model.
  VkPhysicalDeviceVulkan12Features f12 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
  f12.vulkanMemoryModel = VK_TRUE;
  f12.vulkanMemoryModelDeviceScope = VK_TRUE;
  f12.pNext = &pef;
  VkPhysicalDeviceVulkan13Features f13 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_3_FEATURES};
  f13.pNext = &f12;
  VkPhysicalDeviceFeatures2 f2 = {VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, &f13};
  vkGetPhysicalDeviceFeatures2(pds[0], &f2);
  pef.pipelineExecutableInfo = VK_TRUE;
  float prio = 1;
  VkDeviceQueueCreateInfo qci = {VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, NULL, 0, 0, 1, &prio};
  const char *ext[] = {"VK_KHR_pipeline_executable_properties"};
  VkDeviceCreateInfo dci = {VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, &f2, 0, 1, &qci, 0, NULL, 1, ext, NULL};
  VkDevice dev;
  CHECK(vkCreateDevice(pds[0], &dci, NULL, &dev));
  PFN_vkGetPipelineExecutablePropertiesKHR getProps = (PFN_vkGetPipelineExecutablePropertiesKHR)vkGetDeviceProcAddr(dev, "vkGetPipelineExecutablePropertiesKHR");
  PFN_vkGetPipelineExecutableStatisticsKHR getStats = (PFN_vkGetPipelineExecutableStatisticsKHR)vkGetDeviceProcAddr(dev, "vkGetPipelineExecutableStatisticsKHR");
  PFN_vkGetPipelineExecutableInternalRepresentationsKHR getIr =
      (PFN_vkGetPipelineExecutableInternalRepresentationsKHR)vkGetDeviceProcAddr(dev, "vkGetPipelineExecutableInternalRepresentationsKHR");
  const char *irDir = getenv("IR_DIR");
  for (int a = 1; a < argc; a++) {
    size_t n;
    uint32_t *code = slurp(argv[a], &n);
    if (!code) { printf("%s: cannot read\n", argv[a]); continue; }
    VkShaderModuleCreateInfo smi = {VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO, NULL, 0, n, code};
    VkShaderModule sm;
    CHECK(vkCreateShaderModule(dev, &smi, NULL, &sm));
    // The layout: bindings 0..31 of set 0, uniform at 0 and storage elsewhere (what the kernels declare).
    VkDescriptorSetLayoutBinding b[32];
    for (int i = 0; i < 32; i++) {
      b[i] = (VkDescriptorSetLayoutBinding){(uint32_t)i, i == 0 ? VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER : VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 1, VK_SHADER_STAGE_COMPUTE_BIT, NULL};
    }
    int nb = atoi(getenv("BINDINGS") ? getenv("BINDINGS") : "9");
    VkDescriptorSetLayoutCreateInfo dl = {VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO, NULL, 0, (uint32_t)nb, b};
    VkDescriptorSetLayout dsl;
    CHECK(vkCreateDescriptorSetLayout(dev, &dl, NULL, &dsl));
    // Dawn passes num_workgroups through a second set's uniform when a kernel reads it.
    VkDescriptorSetLayoutBinding b1 = {0, VK_DESCRIPTOR_TYPE_UNIFORM_BUFFER, 1, VK_SHADER_STAGE_COMPUTE_BIT, NULL};
    VkDescriptorSetLayoutCreateInfo dl1 = {VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO, NULL, 0, 1, &b1};
    VkDescriptorSetLayout dsl1;
    CHECK(vkCreateDescriptorSetLayout(dev, &dl1, NULL, &dsl1));
    VkDescriptorSetLayout sets[2] = {dsl, dsl1};
    VkPushConstantRange pcr = {VK_SHADER_STAGE_COMPUTE_BIT, 0, 64};
    VkPipelineLayoutCreateInfo pli = {VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, NULL, 0, 2, sets, 1, &pcr};
    VkPipelineLayout pl;
    CHECK(vkCreatePipelineLayout(dev, &pli, NULL, &pl));
    VkComputePipelineCreateInfo cpi = {VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO, NULL,
                                       VK_PIPELINE_CREATE_CAPTURE_STATISTICS_BIT_KHR | (irDir ? VK_PIPELINE_CREATE_CAPTURE_INTERNAL_REPRESENTATIONS_BIT_KHR : 0),
                                       {VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, NULL, 0, VK_SHADER_STAGE_COMPUTE_BIT, sm, "dawn_entry_point", NULL},
                                       pl, VK_NULL_HANDLE, 0};
    VkPipeline pipe;
    VkResult r = vkCreateComputePipelines(dev, VK_NULL_HANDLE, 1, &cpi, NULL, &pipe);
    if (r != VK_SUCCESS) { printf("%s: pipeline failed (%d)\n", argv[a], r); continue; }
    VkPipelineInfoKHR pi = {VK_STRUCTURE_TYPE_PIPELINE_INFO_KHR, NULL, pipe};
    uint32_t ne = 0;
    getProps(dev, &pi, &ne, NULL);
    VkPipelineExecutablePropertiesKHR ep[8];
    for (uint32_t i = 0; i < 8; i++) ep[i] = (VkPipelineExecutablePropertiesKHR){VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_PROPERTIES_KHR};
    if (ne > 8) ne = 8;
    getProps(dev, &pi, &ne, ep);
    printf("%s:", argv[a]);
    for (uint32_t e = 0; e < ne; e++) {
      VkPipelineExecutableInfoKHR ei = {VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INFO_KHR, NULL, pipe, e};
      uint32_t ns = 0;
      getStats(dev, &ei, &ns, NULL);
      VkPipelineExecutableStatisticKHR st[64];
      if (ns > 64) ns = 64;
      for (uint32_t i = 0; i < ns; i++) st[i] = (VkPipelineExecutableStatisticKHR){VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_STATISTIC_KHR};
      getStats(dev, &ei, &ns, st);
      if (ne > 1) printf(" [%s]", ep[e].name);
      for (uint32_t i = 0; i < ns; i++) {
        printf(" %s=", st[i].name);
        switch (st[i].format) {
          case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_BOOL32_KHR: printf("%u", st[i].value.b32); break;
          case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_INT64_KHR: printf("%lld", (long long)st[i].value.i64); break;
          case VK_PIPELINE_EXECUTABLE_STATISTIC_FORMAT_UINT64_KHR: printf("%llu", (unsigned long long)st[i].value.u64); break;
          default: printf("%g", st[i].value.f64);
        }
        // What each statistic means, in the driver's words, once.
        if (a == 1) printf(" (%s; format %d, 0x%llx)", st[i].description, (int)st[i].format, (unsigned long long)st[i].value.u64);
      }
      if (irDir && getIr) {
        uint32_t nr = 0;
        getIr(dev, &ei, &nr, NULL);
        VkPipelineExecutableInternalRepresentationKHR ir[16];
        if (nr > 16) nr = 16;
        for (uint32_t i = 0; i < nr; i++) ir[i] = (VkPipelineExecutableInternalRepresentationKHR){VK_STRUCTURE_TYPE_PIPELINE_EXECUTABLE_INTERNAL_REPRESENTATION_KHR};
        getIr(dev, &ei, &nr, ir);
        for (uint32_t i = 0; i < nr; i++) ir[i].pData = malloc(ir[i].dataSize + 1);
        getIr(dev, &ei, &nr, ir);
        const char *base = strrchr(argv[a], '/');
        base = base ? base + 1 : argv[a];
        for (uint32_t i = 0; i < nr; i++) {
          char path[1024], name[VK_MAX_DESCRIPTION_SIZE];
          snprintf(name, sizeof name, "%s", ir[i].name);
          for (char *c = name; *c; c++) if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9'))) *c = '_';
          snprintf(path, sizeof path, "%s/%s.%u.%s.%s", irDir, base, i, name, ir[i].isText ? "txt" : "bin");
          FILE *f = fopen(path, "wb");
          if (f) { fwrite(ir[i].pData, 1, ir[i].dataSize, f); fclose(f); }
          printf(" IR[%u]=%s (%s, %zu bytes)", i, ir[i].name, ir[i].isText ? "text" : "binary", ir[i].dataSize);
          free(ir[i].pData);
        }
      }
    }
    printf("\n");
    fflush(stdout);
    vkDestroyPipeline(dev, pipe, NULL);
    vkDestroyPipelineLayout(dev, pl, NULL);
    vkDestroyDescriptorSetLayout(dev, dsl, NULL);
    vkDestroyDescriptorSetLayout(dev, dsl1, NULL);
    vkDestroyShaderModule(dev, sm, NULL);
    free(code);
  }
  vkDestroyDevice(dev, NULL);
  vkDestroyInstance(inst, NULL);
  return 0;
}
